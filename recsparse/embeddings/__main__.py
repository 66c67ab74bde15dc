from recsparse.embeddings.cli import app

app()
