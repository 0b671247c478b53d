"""The catalogue stage: tags and audio properties of every file, the cleaning rules, the `rejected`
ledger, the catalogue's EDA, the demo library, and when a release folder is ready to process."""
