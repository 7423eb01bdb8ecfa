"""The reference chat app: rooms, public and private messages, member lists."""
