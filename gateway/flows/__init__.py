"""What happens, one store transaction each: a text in, a reply in, an agent's reply, a delivery."""
