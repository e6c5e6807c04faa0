"""Reports: learning curves, bench grids and plots, the fidelity and pNTK-approximation studies."""
