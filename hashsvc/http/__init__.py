"""HTTP front ends of hashsvc: the JSON API and the web console (console/)."""
