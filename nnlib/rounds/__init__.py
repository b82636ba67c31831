"""The round: what the driver sends, what a mapper runs, how results are reduced, and when (the schedule)."""
