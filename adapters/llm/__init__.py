"""Language-model adapters (the port: engine.llm.model.ChatModel)."""
