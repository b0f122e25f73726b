"""Item representations: LVLM embeddings and descriptions, classic encoders, and the feature store."""
