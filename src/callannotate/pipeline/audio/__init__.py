"""Audio in: decoding, preprocessing, voice activity detection, stream decoding."""
