"""One router per resource: inference, inputs and files, history, system (models / health), compatibility."""
