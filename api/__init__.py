"""The Flask API: REST jobs under /v1, enqueued by task name. Never imports torch or worker/."""
