"""What a study's records become: the end-of-sweep summary, report.html, plots and W&B runs."""
