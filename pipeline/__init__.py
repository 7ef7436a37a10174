"""The engine: media sources and sinks (PyAV), the Ray stage graph, manifests, the runner."""
