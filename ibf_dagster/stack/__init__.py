"""The processes of a deployment, run on one machine without containers (a real Postgres first)."""
