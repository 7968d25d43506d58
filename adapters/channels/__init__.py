"""The channels a conversation runs on: Meta's Cloud API (its webhook parser and sender),
Twilio (its webhook and REST API), and the console for running without either."""
