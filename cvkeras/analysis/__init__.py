"""What a trained run shows: evaluation, plots, Grad-CAM and report.html."""
