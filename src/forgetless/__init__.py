"""forgetless: fine-tune causal LMs on new data without forgetting, and measure the forgetting."""

__version__ = "0.1.0"
