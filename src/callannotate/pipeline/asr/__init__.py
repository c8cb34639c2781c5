"""Speech recognition: Whisper (faster-whisper), live streaming, spoken numbers."""
