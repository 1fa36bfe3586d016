"""Messaging patterns on Azure Queue Storage, one folder per pattern, one file per role."""
