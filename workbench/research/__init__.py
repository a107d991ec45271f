"""Research features built on the engine without changing it.

    activations     capture the gated FFN activations (the input of ffn_down) per layer and
                    token; their distribution, near-zero fractions, hot/cold neurons and
                    token-to-token stability of the active set
    sparse_loading  simulate sparse FFN loading (oracle threshold, sliding window of recently
                    active neurons, row-column bundles): quality vs the dense model and the I/O
                    saved, in logical bytes and in pages of the real GGUF layout
    synthetic       synthetic GGUF files with real architectures' shapes (e.g. a 7B llama in
                    Q4_0), written in a streaming way; a dry-run layout; the one-token
                    measurement (whole-file read vs what one token touches, cold vs warm)

Each module imports only what it needs; import them directly
(`from workbench.research import activations`).
"""
