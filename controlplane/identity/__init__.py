"""Server-side verification of cloud instance identities (AWS, Google Cloud, Azure)."""
