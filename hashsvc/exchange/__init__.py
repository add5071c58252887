"""Partner feeds (issue 22): exchange APIs fetched into sets through the bulk
path. sources.py wraps python-threatexchange's clients, one adapter an API;
feeds.py holds the use cases and the background fetcher. Above the core (it
drives Core's bulk path and history), below the API layer."""
