"""Language models in the conversation: the port (model), documents (knowledge), prompts and
their checks (prompts), and the fallback chain behind the built-in actions (service)."""
