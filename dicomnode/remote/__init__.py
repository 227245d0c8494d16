"""Remote task performers: UPS-RS worklist, WADO-RS retrieve, STOW-RS results."""
