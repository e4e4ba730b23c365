"""npufarm farm package."""
