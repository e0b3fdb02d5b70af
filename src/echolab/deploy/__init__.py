"""Files rendered from the catalogue and the stack description: compose, .env.example, Kubernetes."""
