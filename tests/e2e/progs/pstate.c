/* pstate: sets up kernel state that real programs rely on, then, when /trigger appears (after
 * the container has been migrated), checks that every piece is still there with the values and
 * the data it held before. Results go to /results, one line per feature: "NAME ok" or
 * "NAME FAIL why". /ready holds a token drawn at start-up: a program that was restarted instead
 * of restored draws another one (and finds /ready present: it then reports every feature as
 * failed), so the test can tell a restore from a restart.
 *
 * Usage: pstate [FEATURE...]   (no argument: every feature)
 * Built statically with gcc for the test image (tests/e2e/test_run_process_state.py).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static FILE *out;
static char result[256];

static int failf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(result, sizeof result, fmt, ap);
    va_end(ap);
    return -1;
}

/* Sleeps the whole time even though the timers' signals interrupt it. */
static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR) {}
}

static int read_exact(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Reads n bytes without blocking forever: the data must already be queued. */
static int read_queued(int fd, void *buf, size_t n) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    ssize_t r = read(fd, buf, n);
    fcntl(fd, F_SETFL, fl);
    return r == (ssize_t)n ? 0 : -1;
}

/* --- process tree: children, a grandchild, sessions and process groups ------------------- */
static int tree_req[2], tree_resp[2];
static pid_t child_a, child_b;
static long stat_field(pid_t pid, int field) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    if (!fgets(buf, sizeof buf, f)) { fclose(f); return -1; }
    fclose(f);
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    p += 2; /* field 3 (state) starts here */
    for (int i = 3; i < field; i++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    return strtol(p, NULL, 10);
}
static long rec_ppid_a, rec_pgid_a, rec_sid_a, rec_ppid_b, rec_pgid_b, rec_sid_b;

static void echo_loop(int in, int outfd, int add) {
    int v;
    while (read_exact(in, &v, sizeof v) == 0) {
        v += add;
        if (write(outfd, &v, sizeof v) != sizeof v) _exit(1);
    }
    _exit(0);
}

static int setup_tree(void) {
    if (pipe(tree_req) || pipe(tree_resp)) return failf("pipe: %s", strerror(errno));
    child_a = fork();
    if (child_a == 0) {
        setsid(); /* A leads a new session */
        int r2[2], s2[2];
        if (pipe(r2) || pipe(s2)) _exit(1);
        pid_t b = fork();
        if (b == 0) {
            setpgid(0, 0); /* B: own process group inside A's session */
            echo_loop(r2[0], s2[1], 1000);
        }
        /* A forwards each request to B and B's answer (+1000) back, adding 1 itself */
        int v;
        while (read_exact(tree_req[0], &v, sizeof v) == 0) {
            if (write(r2[1], &v, sizeof v) != sizeof v) _exit(1);
            if (read_exact(s2[0], &v, sizeof v)) _exit(1);
            v += 1;
            if (write(tree_resp[1], &v, sizeof v) != sizeof v) _exit(1);
        }
        _exit(0);
    }
    if (child_a < 0) return failf("fork: %s", strerror(errno));
    int v = 5;
    if (write(tree_req[1], &v, sizeof v) != sizeof v || read_exact(tree_resp[0], &v, sizeof v))
        return failf("child chain did not answer");
    if (v != 1006) return failf("child chain answered %d", v);
    /* find B: the child of A */
    char path[64], buf[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", child_a, child_a);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) return failf("cannot read A's children");
    fclose(f);
    child_b = atoi(buf);
    rec_ppid_a = stat_field(child_a, 4); rec_pgid_a = stat_field(child_a, 5);
    rec_sid_a = stat_field(child_a, 6);
    rec_ppid_b = stat_field(child_b, 4); rec_pgid_b = stat_field(child_b, 5);
    rec_sid_b = stat_field(child_b, 6);
    if (rec_sid_a != child_a || rec_pgid_b != child_b || rec_sid_b != child_a)
        return failf("setsid/setpgid did not take");
    return 0;
}
static int check_tree(void) {
    int v = 41;
    if (write(tree_req[1], &v, sizeof v) != sizeof v || read_exact(tree_resp[0], &v, sizeof v))
        return failf("child chain did not answer");
    if (v != 1042) return failf("child chain answered %d, want 1042", v);
    if (waitpid(-1, NULL, WNOHANG) != 0) return failf("a child exited");
    return 0;
}
static int check_sessions(void) {
    long now[6] = {stat_field(child_a, 4), stat_field(child_a, 5), stat_field(child_a, 6),
                   stat_field(child_b, 4), stat_field(child_b, 5), stat_field(child_b, 6)};
    long was[6] = {rec_ppid_a, rec_pgid_a, rec_sid_a, rec_ppid_b, rec_pgid_b, rec_sid_b};
    for (int i = 0; i < 6; i++)
        if (now[i] != was[i])
            return failf("ppid/pgid/sid #%d of the children: %ld, was %ld", i, now[i], was[i]);
    if (getsid(0) != getsid(0) || getpgrp() != getpgid(0)) return failf("own ids");
    return 0;
}

/* --- threads ------------------------------------------------------------------------------ */
static volatile long thread_ticks;
static pid_t thread_tid;
static __thread long tls_value;
static volatile long thread_tls_seen;
static void *ticker(void *arg) {
    (void)arg;
    tls_value = 777;
    thread_tid = gettid();
    for (;;) {
        thread_ticks++;
        thread_tls_seen = tls_value;
        usleep(10000);
    }
    return NULL;
}
static int setup_threads(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, ticker, NULL)) return failf("pthread_create");
    pthread_detach(t);
    while (!thread_tid) usleep(1000);
    return 0;
}
static int check_threads(void) {
    long t0 = thread_ticks;
    sleep_ms(200);
    if (thread_ticks <= t0) return failf("the thread stopped ticking");
    if (thread_tls_seen != 777) return failf("thread-local value %ld", thread_tls_seen);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/task/%d", thread_tid);
    if (access(path, F_OK)) return failf("thread %d is gone", thread_tid);
    return 0;
}

/* --- pipes, FIFOs, unix sockets, socketpairs ---------------------------------------------- */
static const char DATA[] = "queued-before-the-move";
static int pipe_fds[2];
static int setup_pipe(void) {
    if (pipe(pipe_fds)) return failf("pipe: %s", strerror(errno));
    if (write(pipe_fds[1], DATA, sizeof DATA) != sizeof DATA) return failf("write");
    return 0;
}
static int check_queued(int rfd, int wfd, const char *what) {
    char buf[sizeof DATA];
    if (read_queued(rfd, buf, sizeof buf) || memcmp(buf, DATA, sizeof DATA))
        return failf("%s: the data queued before the move is gone", what);
    if (wfd >= 0) {
        if (write(wfd, "x", 1) != 1 || read_queued(rfd, buf, 1) || buf[0] != 'x')
            return failf("%s: no longer carries data", what);
    }
    return 0;
}
static int check_pipe(void) { return check_queued(pipe_fds[0], pipe_fds[1], "pipe"); }

static int fifo_r, fifo_w;
static int setup_fifo(void) {
    unlink("/tmp/pstate.fifo");
    if (mkfifo("/tmp/pstate.fifo", 0600)) return failf("mkfifo: %s", strerror(errno));
    fifo_r = open("/tmp/pstate.fifo", O_RDONLY | O_NONBLOCK);
    fifo_w = open("/tmp/pstate.fifo", O_WRONLY);
    if (fifo_r < 0 || fifo_w < 0) return failf("open fifo: %s", strerror(errno));
    if (write(fifo_w, DATA, sizeof DATA) != sizeof DATA) return failf("write fifo");
    return 0;
}
static int check_fifo(void) {
    struct stat st;
    if (fstat(fifo_r, &st) || !S_ISFIFO(st.st_mode)) return failf("fd is no longer a fifo");
    return check_queued(fifo_r, fifo_w, "fifo");
}

static int lsock, csock, asock;
static int setup_unix(void) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, "/tmp/pstate.sock");
    unlink(a.sun_path);
    lsock = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(lsock, (void *)&a, sizeof a) || listen(lsock, 4)) return failf("bind: %s", strerror(errno));
    csock = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(csock, (void *)&a, sizeof a)) return failf("connect: %s", strerror(errno));
    asock = accept(lsock, NULL, NULL);
    if (asock < 0) return failf("accept: %s", strerror(errno));
    if (write(csock, DATA, sizeof DATA) != sizeof DATA) return failf("write");
    if (write(asock, DATA, sizeof DATA) != sizeof DATA) return failf("write");
    return 0;
}
static int check_unix(void) {
    if (check_queued(asock, csock, "client->server")) return -1;
    if (check_queued(csock, asock, "server->client")) return -1;
    /* the listening socket still accepts at its path */
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, "/tmp/pstate.sock");
    int c = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(c, (void *)&a, sizeof a)) return failf("new connect: %s", strerror(errno));
    int s = accept(lsock, NULL, NULL);
    if (s < 0) return failf("accept after the move: %s", strerror(errno));
    close(c);
    close(s);
    return 0;
}

static int sp_stream[2], sp_dgram[2];
static int setup_socketpair(void) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp_stream) || socketpair(AF_UNIX, SOCK_DGRAM, 0, sp_dgram))
        return failf("socketpair: %s", strerror(errno));
    if (write(sp_stream[0], DATA, sizeof DATA) != sizeof DATA) return failf("write");
    if (send(sp_dgram[0], "d1", 2, 0) != 2 || send(sp_dgram[0], "d2", 2, 0) != 2) return failf("send");
    return 0;
}
static int check_socketpair(void) {
    if (check_queued(sp_stream[1], sp_stream[0], "stream pair")) return -1;
    char b[8];
    if (recv(sp_dgram[1], b, sizeof b, MSG_DONTWAIT) != 2 || memcmp(b, "d1", 2)) return failf("datagram 1 lost");
    if (recv(sp_dgram[1], b, sizeof b, MSG_DONTWAIT) != 2 || memcmp(b, "d2", 2)) return failf("datagram 2 lost");
    return 0;
}

/* --- eventfd, signalfd, timerfd ----------------------------------------------------------- */
static int efd;
static int setup_eventfd(void) {
    efd = eventfd(0, EFD_NONBLOCK);
    uint64_t v = 42;
    if (efd < 0 || write(efd, &v, 8) != 8) return failf("eventfd: %s", strerror(errno));
    return 0;
}
static int check_eventfd(void) {
    uint64_t v = 0;
    if (read(efd, &v, 8) != 8 || v != 42) return failf("eventfd counter %llu, want 42", (unsigned long long)v);
    return 0;
}

static int sfd;
static int setup_signalfd(void) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    sigprocmask(SIG_BLOCK, &s, NULL);
    sfd = signalfd(-1, &s, SFD_NONBLOCK);
    if (sfd < 0) return failf("signalfd: %s", strerror(errno));
    union sigval sv = {.sival_int = 4242};
    if (sigqueue(getpid(), SIGUSR2, sv)) return failf("sigqueue: %s", strerror(errno));
    return 0;
}
static int check_signalfd(void) {
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof si) != sizeof si) return failf("the pending SIGUSR2 is gone");
    if (si.ssi_signo != SIGUSR2 || si.ssi_int != 4242) return failf("signal %u value %d", si.ssi_signo, si.ssi_int);
    return 0;
}

static int tfd;
static int setup_timerfd(void) {
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {.it_interval = {0, 20000000}, .it_value = {0, 20000000}};
    if (tfd < 0 || timerfd_settime(tfd, 0, &its, NULL)) return failf("timerfd: %s", strerror(errno));
    return 0;
}
static int check_timerfd(void) {
    struct itimerspec its;
    if (timerfd_gettime(tfd, &its)) return failf("timerfd_gettime: %s", strerror(errno));
    if (its.it_interval.tv_sec != 0 || its.it_interval.tv_nsec != 20000000) return failf("interval changed");
    uint64_t n = 0;
    sleep_ms(50);
    if (read(tfd, &n, 8) != 8 || n == 0) return failf("timerfd does not expire");
    return 0;
}

/* --- POSIX and interval timers, signal handlers and masks --------------------------------- */
static volatile sig_atomic_t rt_ticks, alrm_ticks, usr1_hits;
static timer_t ptimer;
static void on_rt(int s) { (void)s; rt_ticks++; }
static void on_alrm(int s) { (void)s; alrm_ticks++; }
static void on_usr1(int s, siginfo_t *si, void *uc) { (void)s; (void)uc; if (si->si_int == 99) usr1_hits++; }

static int setup_posix_timer(void) {
    struct sigaction sa = {.sa_handler = on_rt, .sa_flags = SA_RESTART};
    sigaction(SIGRTMIN + 1, &sa, NULL);
    struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 1};
    struct itimerspec its = {.it_interval = {0, 30000000}, .it_value = {0, 30000000}};
    if (timer_create(CLOCK_MONOTONIC, &ev, &ptimer) || timer_settime(ptimer, 0, &its, NULL))
        return failf("timer_create: %s", strerror(errno));
    return 0;
}
static int check_posix_timer(void) {
    struct itimerspec its;
    if (timer_gettime(ptimer, &its)) return failf("timer_gettime: %s", strerror(errno));
    if (its.it_interval.tv_nsec != 30000000) return failf("interval %ld", its.it_interval.tv_nsec);
    long t0 = rt_ticks;
    sleep_ms(200);
    if (rt_ticks <= t0) return failf("the POSIX timer no longer fires");
    return 0;
}

static int setup_itimer(void) {
    struct sigaction sa = {.sa_handler = on_alrm, .sa_flags = SA_RESTART};
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {.it_interval = {0, 40000}, .it_value = {0, 40000}};
    if (setitimer(ITIMER_REAL, &it, NULL)) return failf("setitimer: %s", strerror(errno));
    return 0;
}
static int check_itimer(void) {
    struct itimerval it;
    getitimer(ITIMER_REAL, &it);
    if (it.it_interval.tv_usec != 40000) return failf("interval %ld", (long)it.it_interval.tv_usec);
    long t0 = alrm_ticks;
    sleep_ms(200);
    if (alrm_ticks <= t0) return failf("the interval timer no longer fires");
    return 0;
}

static int setup_signals(void) {
    struct sigaction sa = {.sa_sigaction = on_usr1, .sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER};
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGHUP);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGWINCH);
    sigaddset(&s, SIGTTIN);
    return sigprocmask(SIG_BLOCK, &s, NULL) ? failf("sigprocmask") : 0;
}
static int check_signals(void) {
    struct sigaction sa;
    sigaction(SIGUSR1, NULL, &sa);
    if (sa.sa_sigaction != on_usr1) return failf("SIGUSR1 handler lost");
    if (!(sa.sa_flags & SA_SIGINFO) || !(sa.sa_flags & SA_RESTART) || !(sa.sa_flags & SA_NODEFER))
        return failf("SIGUSR1 flags %#x", sa.sa_flags);
    if (!sigismember(&sa.sa_mask, SIGHUP)) return failf("SIGUSR1 handler mask lost SIGHUP");
    sigaction(SIGPIPE, NULL, &sa);
    if (sa.sa_handler != SIG_IGN) return failf("SIGPIPE no longer ignored");
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    if (!sigismember(&cur, SIGWINCH) || !sigismember(&cur, SIGTTIN)) return failf("blocked mask lost");
    union sigval sv = {.sival_int = 99};
    sigqueue(getpid(), SIGUSR1, sv);
    for (int i = 0; i < 100 && !usr1_hits; i++) usleep(1000);
    if (!usr1_hits) return failf("SIGUSR1 handler did not run");
    return 0;
}

/* --- SysV IPC ----------------------------------------------------------------------------- */
static int shm_id, sem_id, msg_id;
static char *shm_addr;
static int setup_shm(void) {
    shm_id = shmget(IPC_PRIVATE, 1 << 16, IPC_CREAT | 0600);
    if (shm_id < 0) return failf("shmget: %s", strerror(errno));
    shm_addr = shmat(shm_id, NULL, 0);
    if (shm_addr == (void *)-1) return failf("shmat: %s", strerror(errno));
    for (int i = 0; i < 1 << 16; i++) shm_addr[i] = (char)(i * 7);
    return 0;
}
static int check_shm(void) {
    for (int i = 0; i < 1 << 16; i++)
        if (shm_addr[i] != (char)(i * 7)) return failf("attached segment differs at %d", i);
    char *again = shmat(shm_id, NULL, SHM_RDONLY);
    if (again == (void *)-1) return failf("shmat(%d) after the move: %s", shm_id, strerror(errno));
    if (memcmp(again, shm_addr, 1 << 16)) return failf("a new attach sees other content");
    shmdt(again);
    return 0;
}
static int setup_sem(void) {
    sem_id = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600);
    unsigned short vals[2] = {7, 9};
    if (sem_id < 0 || semctl(sem_id, 0, SETALL, vals)) return failf("semget: %s", strerror(errno));
    return 0;
}
static int check_sem(void) {
    int a = semctl(sem_id, 0, GETVAL), b = semctl(sem_id, 1, GETVAL);
    if (a != 7 || b != 9) return failf("semaphore values %d %d, want 7 9", a, b);
    struct sembuf op = {0, -7, IPC_NOWAIT};
    if (semop(sem_id, &op, 1)) return failf("semop: %s", strerror(errno));
    return 0;
}
struct msg { long type; char text[32]; };
static int setup_msg(void) {
    msg_id = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    struct msg m1 = {1, "first"}, m2 = {2, "second"};
    if (msg_id < 0 || msgsnd(msg_id, &m1, sizeof m1.text, 0) || msgsnd(msg_id, &m2, sizeof m2.text, 0))
        return failf("msgsnd: %s", strerror(errno));
    return 0;
}
static int check_msg(void) {
    struct msg m;
    if (msgrcv(msg_id, &m, sizeof m.text, 0, IPC_NOWAIT) < 0 || m.type != 1 || strcmp(m.text, "first"))
        return failf("message 1 lost");
    if (msgrcv(msg_id, &m, sizeof m.text, 0, IPC_NOWAIT) < 0 || m.type != 2 || strcmp(m.text, "second"))
        return failf("message 2 lost");
    return 0;
}

/* --- files: deleted while open, locks, mappings -------------------------------------------- */
static int del_fd;
static int setup_deleted(void) {
    del_fd = open("/tmp/pstate.deleted", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (del_fd < 0 || write(del_fd, DATA, sizeof DATA) != sizeof DATA) return failf("write");
    return unlink("/tmp/pstate.deleted") ? failf("unlink") : 0;
}
static int check_deleted(void) {
    char buf[sizeof DATA];
    struct stat st;
    if (fstat(del_fd, &st) || st.st_nlink != 0) return failf("the file is no longer deleted");
    if (pread(del_fd, buf, sizeof buf, 0) != sizeof buf || memcmp(buf, DATA, sizeof DATA))
        return failf("its content is gone");
    if (access("/tmp/pstate.deleted", F_OK) == 0) return failf("the name came back");
    return 0;
}

static int flock_fd, fcntl_fd;
static int setup_locks(void) {
    flock_fd = open("/tmp/pstate.flock", O_RDWR | O_CREAT, 0600);
    fcntl_fd = open("/tmp/pstate.fcntl", O_RDWR | O_CREAT, 0600);
    if (flock_fd < 0 || fcntl_fd < 0) return failf("open");
    if (flock(flock_fd, LOCK_EX)) return failf("flock: %s", strerror(errno));
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20};
    if (fcntl(fcntl_fd, F_SETLK, &fl)) return failf("F_SETLK: %s", strerror(errno));
    return 0;
}
/* Another process must still see both locks held, by us. */
static int check_locks(void) {
    int p[2];
    if (pipe(p)) return failf("pipe");
    pid_t me = getpid(), c = fork();
    if (c == 0) {
        char msg[200] = "";
        int f1 = open("/tmp/pstate.flock", O_RDWR);
        if (flock(f1, LOCK_EX | LOCK_NB) == 0) strcpy(msg, "flock is no longer held");
        int f2 = open("/tmp/pstate.fcntl", O_RDWR);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
        if (!msg[0] && fcntl(f2, F_GETLK, &fl)) strcpy(msg, "F_GETLK failed");
        if (!msg[0] && fl.l_type == F_UNLCK) strcpy(msg, "fcntl lock is no longer held");
        if (!msg[0] && (fl.l_pid != me || fl.l_start != 10 || fl.l_len != 20))
            snprintf(msg, sizeof msg, "fcntl lock: pid %d start %ld len %ld", fl.l_pid, (long)fl.l_start, (long)fl.l_len);
        if (write(p[1], msg, sizeof msg) != sizeof msg) _exit(1);
        _exit(0);
    }
    char msg[200];
    int rc = read_exact(p[0], msg, sizeof msg);
    waitpid(c, NULL, 0);
    close(p[0]);
    close(p[1]);
    if (rc) return failf("lock checker died");
    return msg[0] ? failf("%s", msg) : 0;
}

static char *img_shared, *img_private, *rw_map;
static const char IMG_FILE[] = "/usr/local/share/pstate/data";
static int setup_mmap_image(void) {
    int fd = open(IMG_FILE, O_RDONLY);
    if (fd < 0) return failf("open %s: %s", IMG_FILE, strerror(errno));
    img_shared = mmap(NULL, 8192, PROT_READ, MAP_SHARED, fd, 0);
    img_private = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (img_shared == MAP_FAILED || img_private == MAP_FAILED) return failf("mmap: %s", strerror(errno));
    memcpy(img_private + 4096, "private-copy", 12); /* COW page: only in our memory */
    return 0;
}
static int check_mmap_image(void) {
    for (int i = 0; i < 8192; i++)
        if (img_shared[i] != (char)('a' + i % 26)) return failf("shared mapping differs at %d", i);
    if (memcmp(img_private, img_shared, 4096)) return failf("private mapping lost its file page");
    if (memcmp(img_private + 4096, "private-copy", 12)) return failf("private page lost its write");
    char line[256];
    snprintf(line, sizeof line, "%s", IMG_FILE);
    FILE *f = fopen("/proc/self/maps", "r");
    int found = 0;
    while (f && fgets(line, sizeof line, f)) found += strstr(line, IMG_FILE) != NULL;
    if (f) fclose(f);
    if (found < 2) return failf("the mappings no longer name %s", IMG_FILE);
    return 0;
}
static int setup_mmap_rw(void) {
    int fd = open("/var/tmp/pstate.map", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 8192)) return failf("open: %s", strerror(errno));
    rw_map = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (rw_map == MAP_FAILED) return failf("mmap: %s", strerror(errno));
    memcpy(rw_map, DATA, sizeof DATA);
    return msync(rw_map, 8192, MS_SYNC) ? failf("msync") : 0;
}
static int check_mmap_rw(void) {
    if (memcmp(rw_map, DATA, sizeof DATA)) return failf("the mapping lost its data");
    memcpy(rw_map + 4096, "after", 5);
    msync(rw_map, 8192, MS_SYNC);
    int fd = open("/var/tmp/pstate.map", O_RDONLY);
    char buf[8];
    if (fd < 0 || pread(fd, buf, 5, 4096) != 5 || memcmp(buf, "after", 5))
        return failf("the mapping is no longer the file's (a write did not reach it)");
    close(fd);
    return 0;
}

/* --- cwd, umask, rlimits ------------------------------------------------------------------ */
static int setup_cwd(void) {
    mkdir("/var/tmp/pstate-cwd", 0755);
    return chdir("/var/tmp/pstate-cwd") ? failf("chdir: %s", strerror(errno)) : 0;
}
static int check_cwd(void) {
    char buf[256];
    if (!getcwd(buf, sizeof buf) || strcmp(buf, "/var/tmp/pstate-cwd")) return failf("cwd is %s", buf);
    return 0;
}
static int setup_umask(void) { umask(0027); return 0; }
static int check_umask(void) {
    mode_t m = umask(0027);
    return m == 0027 ? 0 : failf("umask %03o, want 027", m);
}
static struct rlimit rl_nofile, rl_core;
static int setup_rlimits(void) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    rl_nofile.rlim_cur = 777;
    rl_nofile.rlim_max = r.rlim_max > 5000 ? 5000 : r.rlim_max;
    rl_core.rlim_cur = 4096;
    rl_core.rlim_max = 8192;
    if (setrlimit(RLIMIT_NOFILE, &rl_nofile) || setrlimit(RLIMIT_CORE, &rl_core))
        return failf("setrlimit: %s", strerror(errno));
    return 0;
}
static int check_rlimits(void) {
    struct rlimit a, b;
    getrlimit(RLIMIT_NOFILE, &a);
    getrlimit(RLIMIT_CORE, &b);
    if (a.rlim_cur != rl_nofile.rlim_cur || a.rlim_max != rl_nofile.rlim_max)
        return failf("RLIMIT_NOFILE %lu/%lu", (unsigned long)a.rlim_cur, (unsigned long)a.rlim_max);
    if (b.rlim_cur != rl_core.rlim_cur || b.rlim_max != rl_core.rlim_max)
        return failf("RLIMIT_CORE %lu/%lu", (unsigned long)b.rlim_cur, (unsigned long)b.rlim_max);
    return 0;
}

/* --- driver ------------------------------------------------------------------------------- */
struct feature { const char *name; int (*setup)(void); int (*check)(void); };
static const struct feature FEATURES[] = {
    {"process_tree", setup_tree, check_tree},
    {"sessions_pgroups", NULL, check_sessions}, /* set up by process_tree */
    {"threads", setup_threads, check_threads},
    {"pipe", setup_pipe, check_pipe},
    {"fifo", setup_fifo, check_fifo},
    {"unix_socket", setup_unix, check_unix},
    {"socketpair", setup_socketpair, check_socketpair},
    {"eventfd", setup_eventfd, check_eventfd},
    {"signalfd", setup_signalfd, check_signalfd},
    {"timerfd", setup_timerfd, check_timerfd},
    {"posix_timer", setup_posix_timer, check_posix_timer},
    {"interval_timer", setup_itimer, check_itimer},
    {"signal_handlers_mask", setup_signals, check_signals},
    {"sysv_shm", setup_shm, check_shm},
    {"sysv_sem", setup_sem, check_sem},
    {"sysv_msg", setup_msg, check_msg},
    {"deleted_open_file", setup_deleted, check_deleted},
    {"file_locks", setup_locks, check_locks},
    {"mmap_image_file", setup_mmap_image, check_mmap_image},
    {"mmap_rw_layer_file", setup_mmap_rw, check_mmap_rw},
    {"cwd", setup_cwd, check_cwd},
    {"umask", setup_umask, check_umask},
    {"rlimits", setup_rlimits, check_rlimits},
};
#define NFEAT (sizeof FEATURES / sizeof FEATURES[0])

static int wanted(const char *name, int argc, char **argv) {
    if (argc < 2) return 1;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], name) || (!strcmp(name, "sessions_pgroups") && !strcmp(argv[i], "process_tree")))
            return 1;
    return 0;
}

int main(int argc, char **argv) {
    char setup_fail[NFEAT][300];
    int on[NFEAT];
    int restarted = access("/ready", F_OK) == 0;
    unsigned long token;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    token = (unsigned long)ts.tv_nsec ^ ((unsigned long)getpid() << 20) ^ (unsigned long)ts.tv_sec;
    /* SIGUSR2 is for the signalfd: blocked before any thread exists, so that no thread takes
     * it with the default action (termination). */
    sigset_t s2;
    sigemptyset(&s2);
    sigaddset(&s2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &s2, NULL);
    for (size_t i = 0; i < NFEAT; i++) {
        on[i] = wanted(FEATURES[i].name, argc, argv);
        setup_fail[i][0] = 0;
        if (on[i] && FEATURES[i].setup && FEATURES[i].setup() != 0)
            snprintf(setup_fail[i], sizeof setup_fail[i], "setup: %s", result);
    }
    if (!restarted) {
        FILE *r = fopen("/ready.new", "w");
        fprintf(r, "%lu\n", token);
        fclose(r);
        rename("/ready.new", "/ready");
    }
    printf("pstate: ready, token %lu\n", token);
    fflush(stdout);
    while (access("/trigger", F_OK) != 0) usleep(50000);
    out = fopen("/results.new", "w");
    fprintf(out, "token %lu\n", token);
    for (size_t i = 0; i < NFEAT; i++) {
        if (!on[i]) continue;
        result[0] = 0;
        if (restarted)
            fprintf(out, "%s FAIL the program was restarted, not restored\n", FEATURES[i].name);
        else if (setup_fail[i][0])
            fprintf(out, "%s FAIL %s\n", FEATURES[i].name, setup_fail[i]);
        else if (FEATURES[i].check() != 0)
            fprintf(out, "%s FAIL %s\n", FEATURES[i].name, result);
        else
            fprintf(out, "%s ok\n", FEATURES[i].name);
    }
    fclose(out);
    rename("/results.new", "/results");
    for (;;) pause();
}
