"""PCIe ATS endpoint model (sans-IO), hosted many to a group; ``device_actors.actor`` is the Ray shell."""
