"""trainer_client."""
