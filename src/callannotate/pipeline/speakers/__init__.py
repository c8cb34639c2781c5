"""Speaker embeddings (CAM++) shared by diarization and voice recognition."""
