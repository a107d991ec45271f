"""Instrumentation: the recorder (events), OS-level touch maps, exports."""
