/* A stand-in for python.exe in the Wine tests of install.bat and gui.bat (the part install.sh's fake python
   plays in tests/test_install_scripts.py). Each call appends one line to FAKE_PY_LOG: its arguments, tab-separated.
     -m venv DIR        makes DIR\Scripts\python.exe, a copy of this program
     -m pip ...         exits with FAKE_PIP_RC (0 when unset)
     -c CODE            answers install.bat's checks by what CODE looks at: torch installed? no; the pins
                        installed? FAKE_REQS_OK (1: no); free disk: plenty; `import torch`: prints "fake torch";
                        anything else (the Python version check): yes
     tools\torch_build.py   prints FAKE_TORCH_CUDA (cu130 when unset), as the real picker does
     anything else      (gui.py and its arguments) exits with FAKE_PY_RC (0 when unset) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <windows.h>

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v ? (int)strtol(v, NULL, 10) : fallback;
}

int main(int argc, char **argv) {
    const char *log = getenv("FAKE_PY_LOG");
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            for (int i = 1; i < argc; i++) fprintf(f, i > 1 ? "\t%s" : "%s", argv[i]);
            fputc('\n', f);
            fclose(f);
        }
    }
    if (argc > 3 && !strcmp(argv[1], "-m") && !strcmp(argv[2], "venv")) {
        char dir[MAX_PATH], self[MAX_PATH];
        snprintf(dir, sizeof dir, "%s", argv[3]);
        CreateDirectoryA(dir, NULL);
        snprintf(dir, sizeof dir, "%s\\Scripts", argv[3]);
        CreateDirectoryA(dir, NULL);
        snprintf(dir, sizeof dir, "%s\\Scripts\\python.exe", argv[3]);
        GetModuleFileNameA(NULL, self, sizeof self);
        return CopyFileA(self, dir, FALSE) ? 0 : 1;
    }
    if (argc > 2 && !strcmp(argv[1], "-m") && !strcmp(argv[2], "pip")) return env_int("FAKE_PIP_RC", 0);
    if (argc > 2 && !strcmp(argv[1], "-c")) {
        const char *code = argv[2];
        if (strstr(code, "version('torch')")) return 1;
        if (strstr(code, "distributions()")) return env_int("FAKE_REQS_OK", 1);
        if (strstr(code, "disk_usage")) { puts("[easel] 2/4 Free disk space here: 100.0 GB (fake)."); return 0; }
        if (strstr(code, "import torch")) { puts("fake torch"); return 0; }
        if (strstr(code, "platform")) { puts("        fake python 3.12"); return 0; }
        return env_int("FAKE_PY_CHECK_RC", 0);
    }
    if (argc > 1 && strstr(argv[1], "torch_build.py")) {
        const char *tag = getenv("FAKE_TORCH_CUDA");
        puts(tag ? tag : "cu130");
        return 0;
    }
    return env_int("FAKE_PY_RC", 0);
}
