"""Views: plot functions of recorded data, and widgets that compose them.

Every plot function takes a profile (or a load report, a tensor, captured activations)
and returns the matplotlib Axes it drew on (a list for multi-panel views); pass `ax=` to
draw into your own figure. Every view also renders as a static PNG (`save_png`,
`save_profile_plots`). Widgets (`workbench.views.widgets`, needs ipywidgets) hold only UI
state and call these functions.

    cost      plot_op_cost, plot_layer_cost, plot_token_timeline, plot_host_device, host_device_rows
    touch     plot_touch_map, plot_touch_layers, plot_fault_estimates, plot_faults_by_tensor,
              plot_residency_passes, plot_tensor_reads
    sparsity  plot_weight_hist, plot_weight_block_map, plot_weight_sparsity,
              capture_ffn_activations, plot_activation_sparsity, plot_activation_hist
    sparse_loading  plot_near_zero_by_layer, plot_neuron_frequency, plot_activation_stability,
              plot_policy_sweep
    loadtime  plot_load_timeline, plot_load_residency, plot_load_bench, plot_load_summary
    compare   plot_backend_comparison, op_errors
    static    save_png, save_profile_plots
"""

from .compare import op_errors, plot_backend_comparison
from .cost import host_device_rows, plot_host_device, plot_layer_cost, plot_op_cost, plot_token_timeline
from .loadtime import plot_load_bench, plot_load_residency, plot_load_summary, plot_load_timeline, plot_tensor_spans
from .sparsity import (FFNActivations, capture_ffn_activations, plot_activation_hist, plot_activation_sparsity,
                       plot_weight_block_map, plot_weight_hist, plot_weight_overview, plot_weight_sparsity,
                       weight_sparsity)
from .sparse_loading import (plot_activation_stability, plot_near_zero_by_layer, plot_neuron_frequency,
                             plot_policy_sweep)
from .static import save_png, save_profile_plots
from .touch import (fault_estimates, plot_fault_estimates, plot_faults_by_tensor, plot_residency_passes,
                    plot_tensor_reads, plot_touch_layers, plot_touch_map, touch_grid)

__all__ = [
    "FFNActivations", "capture_ffn_activations", "fault_estimates", "host_device_rows", "op_errors", "plot_activation_hist",
    "plot_activation_sparsity", "plot_activation_stability", "plot_backend_comparison", "plot_fault_estimates",
    "plot_faults_by_tensor", "plot_host_device", "plot_layer_cost", "plot_load_bench", "plot_load_residency",
    "plot_load_summary", "plot_load_timeline", "plot_near_zero_by_layer", "plot_neuron_frequency", "plot_op_cost",
    "plot_policy_sweep", "plot_residency_passes", "plot_tensor_reads", "plot_tensor_spans", "plot_token_timeline",
    "plot_touch_layers",
    "plot_touch_map", "plot_weight_block_map", "plot_weight_hist", "plot_weight_overview", "plot_weight_sparsity",
    "save_png", "save_profile_plots", "touch_grid", "weight_sparsity",
]


def __getattr__(name):
    # `views.widgets` on first use: ipywidgets is needed only for the widgets
    if name == "widgets":
        import importlib

        return importlib.import_module(f"{__name__}.widgets")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
