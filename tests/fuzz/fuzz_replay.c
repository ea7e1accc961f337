/* SPDX-License-Identifier: MIT */
/*
 * Plain main() for fuzz targets built without libFuzzer: feeds every file
 * named on the command line (directories are walked one level) to
 * LLVMFuzzerTestOneInput and prints TAP, one case per input, so a crash or
 * sanitizer report on any corpus file fails the test suite.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_file(const char *path, int n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0;

	if (f == NULL) {
		printf("not ok %d - %s (cannot open)\n", n, path);
		return 1;
	}
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 4096;
			buf = realloc(buf, cap);
			if (buf == NULL)
				abort();
		}
		size_t got = fread(buf + len, 1, cap - len, f);
		if (got == 0)
			break;
		len += got;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, len);
	free(buf);
	printf("ok %d - %s\n", n, path);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	char **files = NULL;
	size_t nfiles = 0;
	int failed = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;
		DIR *d;
		struct dirent *e;

		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode) && (d = opendir(argv[i]))) {
			while ((e = readdir(d)) != NULL) {
				char *p;

				if (e->d_name[0] == '.')
					continue;
				if (asprintf(&p, "%s/%s", argv[i], e->d_name) < 0)
					abort();
				files = realloc(files, (nfiles + 1) * sizeof(*files));
				files[nfiles++] = p;
			}
			closedir(d);
		} else {
			files = realloc(files, (nfiles + 1) * sizeof(*files));
			files[nfiles++] = strdup(argv[i]);
		}
	}
	qsort(files, nfiles, sizeof(*files), replay_cmp);
	printf("1..%zu\n", nfiles);
	for (size_t i = 0; i < nfiles; i++) {
		failed |= replay_file(files[i], (int)i + 1);
		free(files[i]);
	}
	free(files);
	return failed;
}
