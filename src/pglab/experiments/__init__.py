"""The lab: sweeps (local processes or Ray), reports, gradient-variance studies, videos."""
