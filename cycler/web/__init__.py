"""The lab's dashboard in the browser: pages, live updates and control, served by the daemon."""
