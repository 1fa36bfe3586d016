"""Request/reply: a question and its answer over queues, matched by correlation id."""
