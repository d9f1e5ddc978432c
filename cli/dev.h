/* dev: `archipel dev`, a whole local topology as child processes on loopback addresses. */
#ifndef CLI_DEV_H
#define CLI_DEV_H

/** Run `archipel dev` with its own arguments (argv[0] is "dev"); returns the exit code. */
int dev__main(int argc, char **argv, const char *self_path);

#endif
