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
#include "classifier.h"

int main(void) {
    static float x[N * D], w[D * C], s[N * C], grad_s[N * C];
    static int64_t y[N];
    make_data(x, y);

    int64_t s_shape[2] = {N, C}, y_shape[1] = {N};
    char error[512];
    float loss = 0;
    for (int step = 0; step < 50; step++) {
        scores(x, w, s);
        int status = lossc_cross_entropy(s, s_shape, y, y_shape, &loss, grad_s, 0, error, sizeof error);
        if (status != LOSSC_OK) {
            fprintf(stderr, "error %d: %s\n", status, error);
            return 1;
        }
        if (step % 10 == 0 || step == 49) printf("step %d: loss %.4f\n", step, loss);
        sgd_step(x, grad_s, w, 0.5f);
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
