"""Fine-tune task heads under a freezing strategy on real data, and measure what each costs."""
