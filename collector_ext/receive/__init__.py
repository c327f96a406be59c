"""Where records come in: the OTLP/gRPC LogsService endpoint."""
