"""The use cases over store, index and hashing: Core, curation, review, audit, bulk loads."""
