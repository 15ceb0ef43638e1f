"""StreamFlow: subscriber churn prediction from monthly exports to served predictions."""

__version__ = "0.1.0"
