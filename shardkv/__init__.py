"""shardkv: the console entry point (`shardkv SUBCOMMAND ...`)."""
