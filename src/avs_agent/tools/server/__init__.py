"""The tool server (FastAPI app, Ray Serve deployment), its wire format and the remote client."""
