"""The full profile's tools: foundation models through transformers (AST, GroundingDINO + SAM/SAM2, CLAP, BLIP, CLIP, an audio captioner)."""
