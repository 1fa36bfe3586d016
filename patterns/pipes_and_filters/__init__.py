"""Pipes and filters: an order pipeline of independent steps joined by queues."""
