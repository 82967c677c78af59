/* The pod sandbox's pause process: holds the pod's namespaces, reaps orphans, exits on TERM/INT. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(128 + sig); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGTERM, &term, 0);
    sigaction(SIGINT, &term, 0);
    sigaction(SIGCHLD, &child, 0);
    for (;;) pause();
}
