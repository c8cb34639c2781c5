"""After the models: words to speakers, conversation statistics, sentiment, emotion."""
