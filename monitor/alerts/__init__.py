"""Alerts: what a notification says on each channel, delivering it, and maintenance windows."""
