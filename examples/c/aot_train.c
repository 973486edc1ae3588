/* Trains a linear softmax classifier with a loss compiled ahead of time: the library lossc writes for
 * examples/cross_entropy.lx has one function per loss, which checks the call and returns the loss and its
 * gradient with respect to the scores; the chain rule to the weights is written out here. Nothing of
 * lossc is needed at run time.
 *
 *   lossc compile examples/cross_entropy.lx -o libce.so --header ce.h
 *   cc -O2 -I. examples/c/aot_train.c -L. -lce -Wl,-rpath,$PWD -o aot_train      (or: ce.o from -o ce.o, -lm -lpthread)
 *   ./aot_train
 */
#include <stdint.h>
#include <stdio.h>

#include "ce.h"

#define N 256
#define D 8
#define C 4

static uint64_t state = 42;
static double uniform(void) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(state >> 11) / 9007199254740992.0;
}

int main(void) {
    /* Data: class k's points around a center of their own. */
    static float x[N * D], w[D * C], s[N * C], grad_s[N * C];
    static int64_t y[N];
    float centers[C][D];
    for (int k = 0; k < C; k++)
        for (int d = 0; d < D; d++) centers[k][d] = (float)(2.0 * uniform() - 1.0);
    for (int i = 0; i < N; i++) {
        y[i] = (int64_t)(uniform() * C);
        for (int d = 0; d < D; d++) x[i * D + d] = centers[y[i]][d] + (float)(0.5 * (uniform() - 0.5));
    }

    int64_t s_shape[2] = {N, C}, y_shape[1] = {N};
    char error[512];
    float loss = 0;
    for (int step = 0; step < 50; step++) {
        for (int i = 0; i < N; i++)
            for (int k = 0; k < C; k++) {
                float acc = 0;
                for (int d = 0; d < D; d++) acc += x[i * D + d] * w[d * C + k];
                s[i * C + k] = acc;
            }
        int status = lossc_cross_entropy(s, s_shape, y, y_shape, &loss, grad_s, 0, error, sizeof error);
        if (status != LOSSC_OK) {
            fprintf(stderr, "error %d: %s\n", status, error);
            return 1;
        }
        if (step % 10 == 0 || step == 49) printf("step %d: loss %.4f\n", step, loss);
        for (int d = 0; d < D; d++)
            for (int k = 0; k < C; k++) {
                float g = 0;
                for (int i = 0; i < N; i++) g += x[i * D + d] * grad_s[i * C + k];
                w[d * C + k] -= 0.5f * g;
            }
    }

    /* Bad calls are a status code and a message, never a crash. */
    int64_t label = y[3];
    y[3] = C;
    int status = lossc_cross_entropy(s, s_shape, y, y_shape, &loss, grad_s, 2, error, sizeof error);
    printf("bad label: status %d: %s\n", status, error);
    y[3] = label;
    int64_t short_y[1] = {N - 1};
    status = lossc_cross_entropy(s, s_shape, y, short_y, &loss, grad_s, 2, error, sizeof error);
    printf("bad shape: status %d: %s\n", status, error);
    status = lossc_cross_entropy(NULL, s_shape, y, y_shape, &loss, grad_s, 2, error, sizeof error);
    printf("no scores: status %d: %s\n", status, error);

    /* The generic entry point: arrays in declaration order, hyperparameters at their defaults. */
    const void *inputs[2] = {s, y};
    const int64_t *shapes[2] = {s_shape, y_shape};
    float again = 0;
    float *results[2] = {&again, NULL};
    status = lossc_cross_entropy_call(inputs, shapes, NULL, results, 1, error, sizeof error);
    printf("generic: status %d, same loss: %s\n", status, again == loss ? "yes" : "no");
    return 0;
}
