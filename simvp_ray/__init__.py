"""simvp_ray: distributed training of SimVP / SimVPv2 spatiotemporal predictive models on Ray."""

__version__ = "0.1.0"
