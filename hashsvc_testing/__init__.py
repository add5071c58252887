"""Test media and helpers shared by tests/ and bench/: media generators per
kind (image_media, video_media, audio_media, pdf_media), the hostile-input
corpus (hostile), the reference vectors' location (vectors) and gRPC stubs per
service (stubs). A package of its own, listed in pyproject.toml, so that bench
scripts import it without editing sys.path; it needs the `dev` extra
(pytest, pydub) and, for the media made from photos, ../shared/vectors."""
