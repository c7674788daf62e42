"""Everything that talks to Wings: its API's client, the pass-through in front of it, the
console socket, and what wingsbak does around Wings' own routes."""
