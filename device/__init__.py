"""npufarm device package."""
